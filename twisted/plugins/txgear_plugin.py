"""
twistd plugins of txgear: C{twistd gearman} (the job server) and
C{twistd gearman-worker} (workers).
"""
from twisted.application.service import ServiceMaker

gearmanServer = ServiceMaker(
    "txgear Gearman job server",
    "txgear.tap",
    "A Gearman job server (drop-in for gearmand) with durable background jobs.",
    "gearman",
)

gearmanWorker = ServiceMaker(
    "txgear Gearman worker",
    "txgear.worker_tap",
    "Run Python functions as Gearman workers against one or more job servers.",
    "gearman-worker",
)
