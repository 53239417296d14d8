n = int(input())
xs = list(map(int, input().split()))
dp = [0] * n
dp[0] = xs[0]
for i in range(1, n):
    dp[i] = max(xs[i], dp[i - 1] + xs[i])
print(max(dp))
