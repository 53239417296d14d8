n = int(input())
xs = list(map(int, input().split()))
s = sorted(xs)
print(s[-2] if n > 1 else -1)
