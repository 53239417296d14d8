from functools import reduce
import operator
n = int(input())
xs = list(map(int, input().split()))
print(reduce(operator.add, xs, 0))
