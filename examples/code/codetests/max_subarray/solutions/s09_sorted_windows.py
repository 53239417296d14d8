n = int(input())
xs = list(map(int, input().split()))
sums = sorted(sum(xs[i:j]) for i in range(n) for j in range(i + 1, n + 1))
print(sums[-1])
