from itertools import accumulate
n = int(input())
xs = list(map(int, input().split()))
print(list(accumulate(xs))[-1])
