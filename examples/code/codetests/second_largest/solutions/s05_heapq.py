import heapq
n = int(input())
xs = list(map(int, input().split()))
u = heapq.nlargest(2, set(xs))
print(u[1] if len(u) == 2 else -1)
