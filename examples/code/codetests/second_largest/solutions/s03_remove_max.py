n = int(input())
xs = list(map(int, input().split()))
m = max(xs)
rest = [x for x in xs if x != m]
print(max(rest) if rest else -1)
