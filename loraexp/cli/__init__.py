"""Layer 9, the command lines: ``loraexp`` (:mod:`.main`), ``loraexp validate`` (:mod:`.validate`),
``loraexp report`` (:mod:`.report`), ``loraexp-generate`` (:mod:`.generate`), ``loraexp-trial``
(:mod:`.trial`), and what the console shows (:mod:`.console`)."""
