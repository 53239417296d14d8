n = int(input())
xs = list(map(int, input().split()))
s = sorted(xs)
k = n // 2 if n % 2 else n // 2 - 1
print(s[k])
