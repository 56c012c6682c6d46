"""LLM planning: engines (:mod:`.engines`), versioned prompts (:mod:`.prompts`), answer schemas (:mod:`.schema`;
which schema each prompt decodes under: :mod:`atelier_planner.prompt_schemas`) and the validate-and-repair
runner (:mod:`.runner`)."""
