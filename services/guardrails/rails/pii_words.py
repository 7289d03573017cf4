"""Word lists for the PII rail's person-name checks (services/guardrails/rails/pii.py). All lowercase;
a name candidate's words are compared case-insensitively."""

from __future__ import annotations

# Greetings, interjections and discourse words that spaCy's small model tags PERSON when they open
# a sentence ("Hello! ..." -> "<PERSON>! ..."). Never a name; a name right after one is cued
# ("Hi Maria", "Thanks, Omar").
GREETINGS = frozenset(
    """
    hello hi hey hiya howdy greetings welcome dear thanks thank thx cheers regards bye goodbye
    sure okay ok yes yeah yep no nope please sorry congratulations congrats great good nice cool
    awesome excellent perfect absolutely certainly indeed alright well oh ah aha wow hmm oops
    note tip warning caution summary answer question example step
    """.split()  # noqa: SIM905
)

# Products, projects, languages, platforms and companies that read as a capitalised single word
# ("Forge is ...", "use Kubernetes"). Not people, whatever the model guesses.
TECH_NAMES = frozenset(
    """
    forge milvus kubernetes k8s python redis presidio vllm docker podman linux unix jetson orin
    tesla nvidia cuda grpc protobuf postgres postgresql mysql sqlite mariadb mongodb cassandra kafka
    rabbitmq spark hadoop airflow pytorch torch tensorflow keras numpy pandas scipy spacy
    huggingface transformers llama mistral mixtral gemma qwen phi claude gpt chatgpt openai
    anthropic gemini bard copilot deepseek bert roberta deberta minilm faiss qdrant weaviate
    pinecone chroma elasticsearch opensearch etcd consul vault istio envoy triton tensorrt onnx
    langchain llamaindex fastapi flask django react vue angular svelte node nodejs deno bun
    java javascript typescript rust golang ruby perl php swift kotlin scala haskell elixir erlang
    julia matlab fortran cobol bash zsh powershell git github gitlab bitbucket jenkins helm
    terraform ansible nginx apache grafana prometheus jaeger kibana loki slack jira confluence
    notion excel outlook chrome firefox safari windows macos ubuntu debian fedora centos alpine
    android ios iphone ipad siri alexa google microsoft apple amazon aws azure gcp meta intel amd
    arm raspberry arduino ampere hopper blackwell thor p40 h100 h200 rtx quadro geforce
    """.split()  # noqa: SIM905
)

# Words that, a few words before a capitalised word, say a person is being named: titles,
# ways of reaching someone, and roles.
NAME_CUES = frozenset(
    """
    mr mrs ms miss mx dr prof professor sir madam dame lord lady rev father sister brother
    call phone ring ask contact email message text ping tell meet cc cc'd notify page
    technician engineer manager admin administrator owner lead director doctor nurse colleague
    customer client patient employee staff supervisor officer agent author contractor vendor
    representative rep assistant intern coordinator architect developer analyst operator
    name named called signed attn attention
    """.split()  # noqa: SIM905
)
