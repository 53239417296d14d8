n = int(input())
xs = list(map(int, input().split()))
best = -10**18
cur = 0
for x in xs:
    cur += x
    best = max(best, cur)
    if cur < 0:
        cur = 0
print(best)
