"""Run train(cfg) as one torchrun rank; rank 0 writes the metrics as JSON.

Run: python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py CFG.json OUT.json
"""

import json
import os
import sys

from adastft.training import train

if __name__ == "__main__":
    cfg = json.loads(open(sys.argv[1]).read())
    metrics = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        metrics["world_size"] = int(os.environ["WORLD_SIZE"])
        with open(sys.argv[2], "w") as f:
            json.dump(metrics, f)
