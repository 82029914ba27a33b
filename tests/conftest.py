import os

os.environ.setdefault("DDPM_PROGRESS", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
