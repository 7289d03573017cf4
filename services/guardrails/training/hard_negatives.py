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


# Words that over-fire (issue 15): each family is a verb phrase crossed with contexts and frames.
# The held-out file data/holdout_overfire_benign.txt covers the same families in other wording.
_OVERFIRE = {
    "escort": (
        ("escort visitors", "escort guests", "escort contractors", "escort a delivery driver"),
        ("through the data centre", "to the badge office", "in a secure area", "out of the building"),
    ),
    "kill": (
        ("kill a process", "kill the java process", "kill a zombie process", "kill the stuck job"),
        ("on Linux", "in Windows Task Manager", "listening on port 8080", "inside a Docker container"),
    ),
    "execute": (
        (
            "execute a script",
            "execute a shell script",
            "execute a stored procedure",
            "run and execute a cron job",
        ),
        ("on server startup", "from Python", "in PowerShell", "with elevated permissions on my own laptop"),
    ),
    "shoot": (
        ("shoot a photo", "shoot portraits", "shoot a wedding", "shoot video"),
        ("in low light", "with a 50mm lens", "at golden hour", "on my phone"),
    ),
    "attack surface": (
        (
            "reduce the attack surface",
            "map the attack surface",
            "document the attack surface",
            "shrink the attack surface",
        ),
        ("of our web app", "of a Kubernetes cluster", "of the public API", "for our compliance audit"),
    ),
    "override": (
        (
            "override a setting",
            "override the default timeout",
            "override an environment variable",
            "override the theme colour",
        ),
        ("in application.yml", "in VS Code", "for one Terraform workspace", "in a Helm chart"),
    ),
}
_OVERFIRE_FRAMES = (
    "How do I {act} {ctx}?",
    "What is the best practice to {act} {ctx}?",
    "Our team needs to {act} {ctx}; what are the steps?",
)

# Benign prompts in the languages of the multilingual attacks, so the injection head does not learn
# "not English = attack". Authored; the held-out multilingual benign file uses other sentences.
_MULTILINGUAL = (
    "Traduis en anglais : je voudrais réserver une table pour deux personnes ce soir.",
    "Peux-tu m'expliquer comment fonctionne la photosynthèse ?",
    "Ignore les fautes de frappe et résume ce paragraphe en deux phrases.",
    "Quelles sont les règles de la pétanque ?",
    "Écris un courriel poli pour demander un délai supplémentaire.",
    "Comment arrêter un processus bloqué sous Linux ?",
    "Wie kann ich in Excel doppelte Zeilen entfernen?",
    "Übersetze bitte ins Englische: Der Zug hat heute zwanzig Minuten Verspätung.",
    "Ignoriere die Formatierung und gib mir nur die Zahlen.",
    "Erkläre mir den Unterschied zwischen Wetter und Klima.",
    "Schreibe eine kurze Geburtstagskarte für meine Kollegin.",
    "Welche Einstellungen muss ich überschreiben, um das Standard-Theme zu ändern?",
    "¿Cómo puedo mejorar mi currículum para un puesto de programador?",
    "Traduce al inglés: mañana vamos a la playa con los niños.",
    "Olvida la pregunta anterior, ¿cuál es la capital de Australia?",
    "Dame una receta sencilla de tortilla de patatas.",
    "¿Qué significa la superficie de ataque en ciberseguridad?",
    "Explica las instrucciones para montar una estantería.",
    "Come posso ignorare i file temporanei in git?",
    "Traduci in inglese: il museo apre alle nove.",
    "Scrivi una poesia sull'autunno in Toscana.",
    "Quali sono i sintomi dell'influenza?",
    "Riassumi le istruzioni del manuale in tre punti.",
    "Come si scatta una foto al tramonto con lo smartphone?",
    "Como posso configurar o meu e-mail no telemóvel?",
    "Traduza para o inglês: a reunião foi adiada para sexta-feira.",
    "Ignora o parágrafo anterior e diz-me só a conclusão do relatório.",
    "Quais são os melhores pontos turísticos de Lisboa?",
    "Explique como funciona um motor elétrico.",
    "Escreve uma mensagem de agradecimento para o meu professor.",
    "Qual è la differenza tra un mutuo a tasso fisso e variabile?",
    "Consigliami tre libri da leggere durante le vacanze.",
    "Come si prepara il risotto alla milanese?",
    "Puoi spiegarmi come funziona la raccolta differenziata?",
    "Scrivi un messaggio di auguri per il compleanno di un collega.",
    "Qual è il modo più semplice per imparare lo spagnolo?",
    "Dove posso vedere le stelle cadenti in agosto?",
    "Quel est le meilleur moyen d'apprendre le piano ?",
    "Écris un petit discours pour le départ à la retraite d'un collègue.",
    "Wie lerne ich am besten für eine Prüfung in Statistik?",
    "Schreibe eine kurze Einladung zu unserem Sommerfest.",
    "¿Qué plantas son fáciles de cuidar en un piso?",
    "Escribe un mensaje de cumpleaños para mi abuela.",
    "Qual é a melhor forma de aprender italiano sozinho?",
    "Escreve um pequeno discurso para a festa de aniversário da minha mãe.",
)


# Short conversational turns: in a multi-turn chat every turn goes through the input rail, and
# the heads trained on requests alone blocked "Thanks, noted. Anything else?" (injection 0.91,
# harm 0.61). Openers x follow-ups, plus assistant-style replies a caller sends back as history.
_OPENERS = (
    "Thanks.",
    "Thank you!",
    "Great, thanks.",
    "OK.",
    "Got it.",
    "Perfect.",
    "Sounds good.",
    "Alright.",
    "I see.",
    "Nice, noted.",
    "Hmm.",
    "Cheers.",
    "",
)
_FOLLOW_UPS = (
    "Anything else?",
    "Anything else I should know?",
    "And how long does that take?",
    "What should I do next?",
    "Can you say that more simply?",
    "Can you give me an example?",
    "Is there a quicker way?",
    "What does that mean?",
    "Why is that?",
    "Could you sum it up?",
    "And after that?",
    "Does that apply to the new version as well?",
    "Who do I ask about it?",
    "Where is that written down?",
    "",
)
_REPLIES = (
    "You're welcome! Let me know if there is anything else.",
    "Sure, here is a short summary of the steps.",
    "I can help with that. Which model do you have?",
    "Happy to help. The manual covers this in chapter 3.",
    "Noted. I will keep that in mind for the next answers.",
    "Of course. First, switch the unit off at the wall.",
    "Good question. It depends on the firmware version.",
    "I don't know that from the documents I have.",
)


# Short everyday prompts: a few words with no topic to speak of read as "instruction" to a head
# trained on long attacks, and blocked the first thing a user types ("Say hello." injection 0.93,
# "Who are you?" 0.99, "Tell me a joke." harm 0.91). Verbs x objects, questions about the
# assistant, and answer-style requests.
_SHORT_VERBS = ("Say", "Tell me", "Write", "Give me", "Show me", "Send me", "Make")
_SHORT_OBJECTS = (
    "hello",
    "hi",
    "good morning",
    "a joke",
    "a fun fact",
    "something nice",
    "a short poem",
    "a riddle",
    "a limerick about cats",
    "three words that rhyme with blue",
    "a motivational quote",
    "the time in Tokyo",
    "an example",
    "a summary",
)
_SHORT_PROMPTS = (
    "Who are you?",
    "What are you?",
    "What can you do?",
    "What can you help me with?",
    "Introduce yourself.",
    "Are you a bot?",
    "What is your name?",
    "How do you work?",
    "Answer briefly.",
    "Answer in one sentence.",
    "Be concise.",
    "Keep it short.",
    "Reply in English.",
    "Reply in German please.",
    "Use bullet points.",
    "Use a table.",
    "Repeat the last answer.",
    "Repeat that, please.",
    "Say that again.",
    "Start over.",
    "Try again.",
    "Continue.",
    "Go on.",
    "More detail please.",
    "Explain like I'm five.",
    "Spell 'necessary'.",
    "Count to ten.",
    "Translate hello into German.",
    "Translate 'thank you' into Japanese.",
    "Define entropy.",
    "Help",
    "Help me.",
    "Hello",
    "Hi!",
    "Hey there",
    "Good evening!",
)


# Everyday task verbs with plain objects, and questions about the assistant itself: wide rather
# than deep, so the head learns that a short request without attack content is a request.
_TASK_VERBS = (
    "Describe",
    "Explain",
    "Summarise",
    "Rephrase",
    "Redo",
    "Rewrite",
    "Recite",
    "Name",
    "List",
    "Define",
    "Compare",
    "Suggest",
    "Recommend",
    "Pick",
    "Choose",
    "Calculate",
    "Draw",
    "Sketch",
    "Outline",
    "Shorten",
    "Expand",
    "Simplify",
    "Correct",
    "Check",
    "Sort",
)
_TASK_OBJECTS = (
    "a dog",
    "the moon",
    "it",
    "that",
    "this paragraph",
    "the weather today",
    "a good book",
    "the numbers one to five",
    "your answer",
    "the first step",
    "two fruits",
    "an animal",
    "a colour for my kitchen",
    "the difference between tea and coffee",
    "a name for my cat",
    "a random word",
    "the days of the week",
    "my shopping list",
    "the main idea",
    "a healthy breakfast",
)
_ABOUT_ASSISTANT = (
    "Who built you?",
    "Who created you?",
    "Who trained you?",
    "What is your goal?",
    "What is your job?",
    "What were you made for?",
    "Where do you run?",
    "How old are you?",
    "Do you have a name?",
    "Can you see images?",
    "Can you browse the web?",
    "Do you remember me?",
    "How smart are you?",
    "Are you human?",
    "What model are you?",
    "What version are you?",
    "What do you know about?",
    "What topics can you answer?",
    "Which documents can you read?",
    "How should I ask you questions?",
)


# Requests a documentation assistant gets all day (Forge is a RAG appliance): show a config file,
# write a guide, as a code block or a table. The training data had few, and the head read
# "Show me the default ... as a code block" as an instruction attack (0.83).
_DOC_FRAMES = (
    "Show me {thing} as a code block.",
    "Show me {thing}.",
    "Print {thing} in a table.",
    "Paste {thing} with comments.",
)
_DOC_THINGS = (
    "the default nginx.conf",
    "the sample docker-compose.yml",
    "the example values.yaml for the chart",
    "the systemd unit file of the agent",
    "the recommended postgresql.conf settings",
    "the full list of environment variables",
    "the default logging configuration",
    "the minimal config.toml",
)
_GUIDE_FRAMES = (
    "Write a step-by-step guide to {task}.",
    "Give me the steps for {task}.",
    "Write a checklist for {task}.",
    "Draft a runbook for {task}.",
)
_GUIDE_TASKS = (
    "upgrading PostgreSQL from version 14 to version 16",
    "migrating the database to a new server",
    "rotating the TLS certificates",
    "installing the agent on Ubuntu 24.04",
    "restoring last night's backup",
    "setting up log rotation for the service",
    "moving the app from one cloud region to another",
    "replacing a failed disk in the RAID array",
)


# Questions an appliance's users ask about their own runbooks, equipment notes and policies (issue
# 16): incidents, injuries, acid, alarms, masks and pay read as "harm" to a head trained on requests
# to a chatbot, and it blocked "How often must updates be given during a SEV2 incident?" (answer
# eval). Frames x workplace subjects, several domains; the held-out file
# data/holdout_workplace_benign.txt is written separately in other wording, and the answer eval's
# own questions are never trained on.
_WORKPLACE_FRAMES = (
    "How often must {subject} be {checked}?",
    "Who do I tell about {event}?",
    "What should I do after {event}?",
    "Which form do I fill in after {event}?",
    "How quickly must {event} be reported?",
    "What is the part number of {part}?",
    "What is the lead time for {part}?",
    "Where are {part}s kept in the stores?",
    "How much does the company pay towards {benefit} each year?",
    "Who approves {benefit}?",
    "What protective equipment is required for {task}?",
    "What is the procedure for {task}?",
)
_WORKPLACE_SUBJECTS = (
    ("the emergency showers", "tested"),
    ("the gas detectors", "bump tested"),
    ("the boiler safety valves", "inspected"),
    ("the first aid kits", "restocked"),
    ("the scaffold tags", "renewed"),
    ("the torque wrenches", "calibrated"),
    ("status updates to customers", "sent"),
    ("the generator", "run under load"),
)
_WORKPLACE_EVENTS = (
    "a chemical spill in the paint store",
    "a needle-stick injury",
    "a cut from a box cutter",
    "a P1 outage",
    "a fire alarm in the server room",
    "a leaking ammonia valve",
    "a near miss with a pallet truck",
    "a data breach",
    "an electric shock from a faulty socket",
    "smoke coming from a battery charger",
)
_WORKPLACE_PARTS = (
    "the hydraulic hose for the scissor lift",
    "the drive belt of the air handling unit",
    "the pressure relief valve on the compressor",
    "the blade guard for the band saw",
    "the contactor in the conveyor panel",
    "the filter cartridge of the fume extractor",
)
_WORKPLACE_BENEFITS = (
    "prescription safety glasses",
    "winter work jackets",
    "hearing tests",
    "overtime during an incident",
    "the first aid course",
    "steel-toe boots",
)
_WORKPLACE_TASKS = (
    "welding galvanised steel",
    "handling sulphuric acid",
    "cutting asbestos cement sheets",
    "working at height on the mezzanine",
    "entering a confined space",
    "isolating the 400 V supply",
    "disposing of used solvents",
    "grinding cast iron",
)


def workplace_negatives() -> list[str]:
    fills = {
        "subject": [{"subject": s, "checked": c} for s, c in _WORKPLACE_SUBJECTS],
        "event": [{"event": e} for e in _WORKPLACE_EVENTS],
        "part": [{"part": p} for p in _WORKPLACE_PARTS],
        "benefit": [{"benefit": b} for b in _WORKPLACE_BENEFITS],
        "task": [{"task": t} for t in _WORKPLACE_TASKS],
    }
    rows = []
    for frame in _WORKPLACE_FRAMES:
        slot = next(name for name in fills if "{" + name + "}" in frame)
        rows += [frame.format(**values) for values in fills[slot]]
    return rows


def documentation_negatives() -> list[str]:
    shows = [f.format(thing=t) for f, t in itertools.product(_DOC_FRAMES, _DOC_THINGS)]
    guides = [f.format(task=t) for f, t in itertools.product(_GUIDE_FRAMES, _GUIDE_TASKS)]
    return [*shows, *guides]


def short_negatives() -> list[str]:
    made = [f"{verb} {obj}." for verb, obj in itertools.product(_SHORT_VERBS, _SHORT_OBJECTS)]
    tasks = [f"{verb} {obj}." for verb, obj in itertools.product(_TASK_VERBS, _TASK_OBJECTS)]
    return [*made, *tasks[::2], *_SHORT_PROMPTS, *_ABOUT_ASSISTANT]


def conversational_negatives() -> list[str]:
    turns = [f"{o} {f}".strip() for o, f in itertools.product(_OPENERS, _FOLLOW_UPS)]
    return [t for t in turns if t] + list(_REPLIES)


def overfire_negatives() -> list[str]:
    rows = []
    for acts, contexts in _OVERFIRE.values():
        for i, (act, ctx) in enumerate(itertools.product(acts, contexts)):
            rows.append(_OVERFIRE_FRAMES[i % len(_OVERFIRE_FRAMES)].format(act=act, ctx=ctx))
    return rows


def hard_negatives() -> list[str]:
    templated = [
        frame.format(verb=verb, obj=obj)
        for (frame, verb), obj in itertools.product(itertools.product(_FRAMES, _VERBS), _OBJECTS)
    ]
    # Every object with every verb in one frame, the others sampled deterministically.
    return [
        *_TOPICAL,
        *templated[::3],
        *overfire_negatives(),
        *_MULTILINGUAL,
        *conversational_negatives(),
        *short_negatives(),
        *documentation_negatives(),
        *workplace_negatives(),
    ]
