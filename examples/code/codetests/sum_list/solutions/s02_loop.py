n = int(input())
xs = list(map(int, input().split()))
t = 0
for x in xs:
    t += x
print(t)
