n = int(input())
xs = list(map(int, input().split()))
best = xs[0]
s = 0
low = 0
for x in xs:
    s += x
    best = max(best, s - low)
    low = min(low, s)
print(best)
