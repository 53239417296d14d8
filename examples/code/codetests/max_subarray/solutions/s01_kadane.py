n = int(input())
xs = list(map(int, input().split()))
best = cur = xs[0]
for x in xs[1:]:
    cur = max(x, cur + x)
    best = max(best, cur)
print(best)
