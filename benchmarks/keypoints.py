"""Keypoints end to end on mnist-keypoints: does distillation help a heatmap pose model, and what do pruning and
int8 cost?

    python benchmarks/keypoints.py              # the keypoints quickstart's settings; writes benchmarks/keypoints.json
    python benchmarks/keypoints.py --tiny       # a check that the script runs (1 epoch, few images): no JSON kept

`recipes/keypoints_quickstart.yaml` (pose_small teacher, pose_mobile distilled from its heatmaps,
pruned 30% with the heatmap conv kept whole, ONNX / TFLite fp32 and int8) against pose_mobile
trained on labels alone at equal epochs (benchmarks/task_quickstart.py), both students at 3 seeds
(the differences are near seed noise on these canvases), and a third student distilled with
peak-weighted heatmap MSE (`distill.peak_weight=10`), the loss the default (plain MSE) was chosen
against on validation.
Scores: OKS AP@[.5:.95], AP50, AP75 (pycocotools) and PCK@0.1 / PCK@0.2, from the keypoints the benchmark agent decoded;
end-to-end latency includes numpy heatmap decoding.
"""

from task_quickstart import HERE, main

if __name__ == "__main__":
    main("keypoints", HERE.parent / "recipes" / "keypoints_quickstart.yaml",
         ("oks_ap", "oks_ap50", "oks_ap75", "pck10", "pck20"), __doc__, seeds=3,
         variants=("distill.peak_weight=10",))
