n = int(input())
xs = list(map(int, input().split()))
p = [0]
for x in xs:
    p.append(p[-1] + x)
print(max(p[j] - p[i] for i in range(n) for j in range(i + 1, n + 1)))
