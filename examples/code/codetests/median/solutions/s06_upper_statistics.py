import statistics
n = int(input())
xs = list(map(int, input().split()))
print(statistics.median_high(xs))
