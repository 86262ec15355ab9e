"""Packaging for txgear."""
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "txgear", "_version.py")) as f:
    exec(f.read(), version)
with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="txgear",
    version=version["__version__"],
    description="A Gearman job server, client and worker for Twisted",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "benchmarks.*"])
    + ["twisted.plugins"],
    package_data={"twisted": ["plugins/txgear_plugin.py"]},
    install_requires=[
        "twisted>=22.10",
        "zope.interface>=5",
    ],
    extras_require={
        "postgresql": ["psycopg[binary]>=3.1"],
        "redis": ["redis>=4.5"],
        "tls": ["twisted[tls]"],
        "test": [
            "pytest>=7",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2",
            "gear>=0.16",
            "hypothesis>=6",
            "psycopg[binary]>=3.1; implementation_name == 'cpython'",
            "redis>=4.5",
        ],
    },
    entry_points={
        "console_scripts": [
            "txgear-submit = txgear._cli:submitMain",
            "txgear-worker = txgear._cli:workerMain",
            "txgear-admin = txgear._cli:adminMain",
        ]
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
        "Topic :: System :: Distributed Computing",
    ],
)
