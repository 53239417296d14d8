import random
from cyaron import Vector

random.seed(int(input()))
n = random.randint(1, 8)
print(n)
print(*[v[0] for v in Vector.random(n, [(-20, 10)])])
