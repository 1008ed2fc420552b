"""Detection end to end on mnist-detect: does distillation help a detector, and what do pruning and int8 cost?

    python benchmarks/detect.py                 # the detect quickstart's settings; writes benchmarks/detect.json
    python benchmarks/detect.py --tiny          # a check that the script runs (1 epoch, few images): no JSON kept

`recipes/detect_quickstart.yaml` (det_small teacher, det_tiny distilled from it, pruned 30% with the
head kept whole, ONNX / TFLite fp32 and int8) against det_tiny trained on labels alone at equal
epochs (benchmarks/task_quickstart.py). Scores: COCO mAP@[.5:.95], mAP@.5, mAP@.75 (pycocotools,
from the detections the benchmark agent decoded); end-to-end latency includes numpy decoding and NMS.
"""

from task_quickstart import HERE, main

if __name__ == "__main__":
    main("detect", HERE.parent / "recipes" / "detect_quickstart.yaml", ("mAP", "mAP50", "mAP75"), __doc__)
