"""
twistd plugins of txgear: C{twistd gearman} (the job server).
"""
from twisted.application.service import ServiceMaker

gearmanServer = ServiceMaker(
    "txgear Gearman job server",
    "txgear.tap",
    "A Gearman job server (drop-in for gearmand) with durable background jobs.",
    "gearman",
)
