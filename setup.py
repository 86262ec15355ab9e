"""
Packaging for txgear: the metadata is in pyproject.toml; this file only lists
the packages, because the twistd plugin file twisted/plugins/txgear_plugin.py
belongs to Twisted's C{twisted.plugins} package, which must not get an
C{__init__.py} from us.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "benchmarks.*"])
    + ["twisted.plugins"],
    package_data={"twisted": ["plugins/txgear_plugin.py"], "txgear.web": ["openapi.json", "static/*"]},
)
