"""mona_client: instrument algorithm runs (ARCs) and export their KAPIs and dimensions."""

__version__ = "0.1.0"
