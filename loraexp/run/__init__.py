"""Layer 6, one run: the recipe (:mod:`.recipe`) and what it drives -- the TrainerCallbacks
(:mod:`.callbacks`), the merge and reload checks (:mod:`.merge_check`), representation drift,
checkpoints and resume decisions (:mod:`.checkpoints`, :mod:`.run_state`), preemption, distributed
ranks, tracking, device checks (:mod:`.device`) and ``loraexp validate``'s checklist
(:mod:`.checklist`)."""
