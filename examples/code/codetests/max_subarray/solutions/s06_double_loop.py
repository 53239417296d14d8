n = int(input())
xs = list(map(int, input().split()))
best = None
for i in range(n):
    s = 0
    for j in range(i, n):
        s += xs[j]
        if best is None or s > best:
            best = s
print(best)
