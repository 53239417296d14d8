n = int(input())
xs = list(map(int, input().split()))
t, i = 0, 0
while i < len(xs):
    t += xs[i]
    i += 1
print(t)
