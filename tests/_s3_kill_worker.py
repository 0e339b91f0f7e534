"""Writes epoch 2 of an S3 store and is SIGKILLed by tests/test_store_s3_crash.py
somewhere in its upload. argv: url endpoint npages pause_s. Before each PUT
it prints the object's name (and sleeps pause_s), so that the test can
kill it at a chosen step or at a random instant of the transfer."""
import sys
import time

import numpy as np

from memckpt.store.s3 import S3Store

url, endpoint, npages, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
opts = {"endpoint_url": endpoint, "region_name": "us-east-1",
        "aws_access_key_id": "memckpt-test", "aws_secret_access_key": "memckpt-test"}
st = S3Store(url, storage_options=opts)
put = st.bucket.put


def noisy_put(name, body, size, *, exclusive):
    print(f"PUT {name}", flush=True)
    time.sleep(pause)
    put(name, body, size, exclusive=exclusive)
    print(f"DONE {name}", flush=True)


st.bucket.put = noisy_put
rng = np.random.default_rng(7)
w = st.begin("incremental", parent=1, npages=npages)
w.add_pages(np.arange(npages, dtype=np.uint64), rng.integers(0, 256, (npages, 4096), dtype=np.uint8))
w.commit(pages_dirty=npages, pause_s=0.0)
print("COMMITTED", flush=True)
time.sleep(30)
