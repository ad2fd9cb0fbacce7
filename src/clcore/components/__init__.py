"""Building blocks that several algorithms share, one concept per file.

An algorithm file holds what is particular to its paper; a piece that two or more methods
compute the same way lives here, once, with the equation it implements in its docstring, and
the algorithms import it (``docs/architecture.md``, "Shared building blocks"):

- ``parameter_penalty``: an importance-weighted distance to earlier parameters,
  ``sum_i Omega_i (theta_i - theta*_i)^2``, the penalty of EWC, online EWC, SI, MAS and L2, which
  differ only in how ``Omega`` is estimated;
- ``distillation``: a distillation loss with temperature on old outputs (LwF);
- ``previous_model``: the frozen model of the previous task's end, out of the module registry
  (LwF's teacher, iCaRL's old network);
- ``weight_masks``: per-task binary masks over the weights of any backbone's Linear and Conv
  layers, applied with ``torch.func.functional_call``, with earlier tasks' weights frozen (PackNet,
  WSN);
- ``replay_memory``: a fixed-size memory of uint8 inputs with labels, task ids and optional
  logits; reservoir and class-balanced policies, its own seeded generator, and the logits/targets
  of a memory batch that mixes tasks (ER, DER, DER++, A-GEM, GDumb, ER-ACE, iCaRL);
- ``herding``: iCaRL's exemplar selection (Rebuffi et al. 2017, Algorithm 4).

HAT's and AdaHAT's unit masks are backbones' layers and live in ``clcore.backbones``
(``hat_mask.py``). A block is added with the first algorithm that uses it, never ahead of it.
"""
