n = int(input())
xs = list(map(int, input().split()))
best = cur = 0
for x in xs:
    cur = max(0, cur + x)
    best = max(best, cur)
print(best)
