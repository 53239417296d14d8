n = int(input())
xs = list(map(int, input().split()))
def f(a, lo, hi):
    if lo == hi:
        return a[lo]
    m = (lo + hi) // 2
    left = s = 0
    left = -10**9
    for i in range(m, lo - 1, -1):
        s += a[i]
        left = max(left, s)
    right = -10**9
    s = 0
    for i in range(m + 1, hi + 1):
        s += a[i]
        right = max(right, s)
    return max(f(a, lo, m), f(a, m + 1, hi), left + right)
print(f(xs, 0, n - 1))
