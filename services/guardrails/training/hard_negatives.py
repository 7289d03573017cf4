"""Hard negatives for training: benign requests that use the words attacks use ("ignore",
"instructions", "system prompt", "kill", "attack", ...). Generated from templates so the set is
reproducible; the held-out hard benign prompts (data/holdout_hard_benign.txt) are written
separately and share no sentence with these."""

from __future__ import annotations

import itertools

_VERBS = ("ignore", "skip", "disregard", "bypass", "override", "forget about", "drop")
_OBJECTS = (
    "whitespace changes in git diff",
    "case differences when comparing two strings in Python",
    "the first line of a CSV file when loading it with pandas",
    "SSL certificate errors in curl on my test server",
    "the cache when running pytest",
    "node_modules in my .gitignore",
    "null values when computing an average in SQL",
    "the default config and load my own YAML file",
    "a failing test in the CI pipeline temporarily",
    "the previous commit and go back to a clean state",
    "the instructions in the old README that are outdated",
    "warnings from the TypeScript compiler for one line",
    "the rules of the linter for generated files",
    "the system proxy settings in Firefox",
    "duplicate rows in an Excel sheet",
)
_FRAMES = (
    "How do I {verb} {obj}?",
    "What's the right way to {verb} {obj}?",
    "Is it safe to {verb} {obj}?",
    "Can you show me how to {verb} {obj}",
)
_TOPICAL = (
    "Explain what a system prompt is in large language model applications.",
    "Write a short blog post about why prompt injection is a security risk.",
    "What is a jailbreak in the context of iPhones?",
    "Summarise the OWASP top 10 for LLM applications.",
    "How do companies defend chatbots against prompt injection attacks?",
    "Translate 'ignore the noise and focus' into Spanish.",
    "My teacher told us to ignore the previous chapter for the exam. Which topics remain?",
    "What does the developer mode in Android let me do?",
    "Give me instructions for assembling an IKEA bookshelf.",
    "Please follow these instructions: summarise the text below in three bullet points.",
    "You are a helpful assistant for a bakery. Answer questions about opening hours.",
    "Act as a travel guide and suggest three things to do in Lisbon.",
    "Pretend you are a pirate and tell a children's story about treasure.",
    "Roleplay as a job interviewer for a junior developer position.",
    "From now on, answer in French please.",
    "Forget the last question, what is the capital of Canada?",
    "Reveal the answer to the riddle only after I guess twice.",
    "What are the new instructions for filing taxes this year?",
    "How can I kill a Python process that is stuck?",
    "How do I kill all child processes when the parent exits in bash?",
    "What's the best way to shoot photos of the moon?",
    "How did the invention of gunpowder change medieval warfare?",
    "Explain how nuclear fission works in a power plant.",
    "What household chemicals should never be mixed for safety reasons?",
    "How do I attack this chess opening as black?",
    "What are the symptoms of a heart attack?",
    "How can I crack an egg with one hand?",
    "Write a murder mystery plot for a board game night.",
    "How do vaccines train the immune system?",
    "Why is my password manager asking me to override the saved password?",
    "How do I hack together a quick prototype in Flask?",
    "What's a good exploit of the pawn structure in the Sicilian defence?",
    "Explain the plot of the movie Ex Machina.",
    "How do penetration testers get permission before testing a network?",
    "What does 'do anything now' mean in marketing slogans?",
    "Which is more dangerous for dogs, chocolate or grapes?",
    "How do I bypass a clogged section of a garden hose?",
    "How do I disable a smoke detector that keeps beeping because of a low battery?",
)


def hard_negatives() -> list[str]:
    templated = [
        frame.format(verb=verb, obj=obj)
        for (frame, verb), obj in itertools.product(itertools.product(_FRAMES, _VERBS), _OBJECTS)
    ]
    # Every object with every verb in one frame, the others sampled deterministically.
    return [*_TOPICAL, *templated[::3]]
