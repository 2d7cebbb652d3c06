"""Every bound the app puts on what one user can ask of the server, in one place (the tests import it)."""

from __future__ import annotations

from capnet.images import DEFAULT_MAX_PIXELS

# Predict
MAX_PIXELS = DEFAULT_MAX_PIXELS  # 40 megapixels: larger images are refused before they are decoded
MAX_IMAGES = 16  # images per prediction
MAX_LABELS = 200  # labels served at once (Predict, Label graph, and the classes of a fine-tune)
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # any one uploaded file: Gradio refuses larger ones before a handler runs
DECODE_SIDE = 512  # large images are reduced while decoding until their short side nears this

# Fine-tune
MAX_FT_IMAGES = 300
MIN_FT_IMAGES = 10
MAX_EPOCHS = 20
MAX_SECONDS = 300
LR_MIN, LR_MAX = 1e-6, 1.0
MAX_ZIP_BYTES = 200_000_000  # unpacked size of a fine-tune or report zip
MAX_ZIP_FILES = 2_000

# Thresholds and graph controls
THRESHOLD_MIN, THRESHOLD_MAX = 0.0, 1.0
MAX_TOPK = 10

# Head vs tail
MAX_REPORT_BYTES = 20_000_000  # report.json and scores.csv
MAX_REPORTS = 8  # reports shown side by side

# Why did it miss? (evidence maps in Predict and the failure gallery, failure patterns in the dashboard)
EXPLAIN_SIDE = 320  # pixels per side of the view and overlay shown (the map itself is the model's grid)
EXPLAIN_GRID = 6  # cells per side of the occlusion map (grid * grid forward passes per click)
EXPLAIN_EDGES = 10  # neighbours listed in a graph attribution, the largest changes first
MAX_PR_CLASSES = 40  # precision-recall curves drawn at once (filter to a group for the others)
CURVE_POINTS = 200  # points kept per precision-recall curve
CONFUSION_K = 10  # highest-scored negatives / lowest-scored positives looked at per class

# Disk: Gradio's cache of uploads and outputs is swept every hour of files older than an hour.
CACHE_SWEEP = (3600, 3600)
