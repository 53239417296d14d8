n = int(input())
xs = list(map(int, input().split()))
a = b = None
for x in xs:
    if a is None or x > a:
        a, b = x, a
    elif x != a and (b is None or x > b):
        b = x
print(b if b is not None else -1)
