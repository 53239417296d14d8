n = int(input())
xs = list(map(int, input().split()))
s = sorted(xs)
print(s[n // 2])
