from actord import Client
client = Client(scheduler_file="scheduler.json")

import random

def throw_darts(args):
    darts, seed = args
    random.seed(seed)
    count = 0.0
    for i in range(darts):
        x = random.random()
        y = random.random()
        if x * x + y * y < 1.0:
            count += 1.0
    return (count, darts)

futures = client.map(throw_darts, [(max(1000000, int(random.expovariate(1.0/10000000.0))), i+192837465) for i in range(100)])

results = client.gather(futures)

text_file = open("dask_output.txt", "w")
text_file.write("results is %s" %(results))
text_file.close()

print("dask test completed")
