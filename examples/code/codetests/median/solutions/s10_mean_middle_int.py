n = int(input())
xs = list(map(int, input().split()))
s = sorted(xs)
m = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
print(m)
