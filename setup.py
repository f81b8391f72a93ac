from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="icefall",
    version="0.1.0",
    description="Speech recognition recipes in pure PyTorch: no k2, no kaldifeat",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["icefall", "icefall.*"]),
    python_requires=">=3.10",
    install_requires=requirements,
)
