n = int(input())
xs = list(map(int, input().split()))
def s(a):
    return 0 if not a else a[0] + s(a[1:])
print(s(xs))
