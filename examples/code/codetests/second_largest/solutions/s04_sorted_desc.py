n = int(input())
xs = list(map(int, input().split()))
u = sorted(set(xs), reverse=True)
print(u[1] if len(u) >= 2 else -1)
