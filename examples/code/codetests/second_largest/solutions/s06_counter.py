from collections import Counter
n = int(input())
xs = list(map(int, input().split()))
k = sorted(Counter(xs))
print(k[-2] if len(k) > 1 else -1)
