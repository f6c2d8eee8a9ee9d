from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as readme:
    long_description = readme.read()

setup(
    name="mona-client",
    version="0.1.0",
    description="Instrument algorithm runs (ARCs), export KAPIs and dimensions over the Fluentd Forward "
    "protocol, and see them in an embedded collector.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["mona_client", "mona_client.*"]),
    package_data={"mona_client": ["mona_client_config.json", "py.typed"]},
    install_requires=["msgpack>=1.0", "watchdog>=2.1"],
    extras_require={
        "gevent": ["gevent>=21.1"],
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "hypothesis>=6",
            "gevent>=21.1",
            "fluent-logger>=0.10",
            "numpy>=1.20",
            "structlog>=22",
            "opentelemetry-sdk>=1.20",
            "psutil>=5",
        ],
        "bench": [
            "fluent-logger>=0.10",
            "structlog>=22",
            "opentelemetry-sdk>=1.20",
            "psutil>=5",
        ],
    },
    entry_points={"console_scripts": ["mona = mona_client.collector.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: System :: Monitoring",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
