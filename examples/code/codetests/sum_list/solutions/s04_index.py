n = int(input())
xs = list(map(int, input().split()))
t = 0
for i in range(n):
    t += xs[i]
print(t)
