import math
n = int(input())
xs = list(map(int, input().split()))
print(int(math.fsum(xs)))
