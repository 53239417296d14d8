n = int(input())
xs = list(map(int, input().split()))
u = sorted(set(xs))
print(u[-2] if len(u) > 1 else -1)
