"""Seed 003's curl examples (Analysys Ark /uba/api/cohort), verbatim, and the body of its create call."""

import json
import shlex

# The seed's appKey header; a test project answers to it (python -m core.manage set-app-key).
SEED_APP_KEY = "31abd9593e9983ec"


# The seed's five curl examples, verbatim (tests replace the host, the token and the example cohort id 2).
SEED_CURLS = {
    'create': 'curl -H "Content-Type:application/json" -H "token:4113c9cad1c301113783f433e254888c" -H "appKey:31abd9593e9983ec" -X POST --data \'{\n\t"name":"apiTest02",\n\t"dynamic":0,\n\t"content":{\n\t    "ruleGroup":[\n\t        {\n\t            "rules":[\n\t                {\n\t                    "type":"user",\n\t                    "expression":"user.xwho",\n\t                    "function":"NOT_NULL",\n\t                    "params":[\n\t\n\t                    ]\n\t                },\n\t                {\n\t                    "type":"user",\n\t                    "expression":"user.$email",\n\t                    "function":"NOT_EQ",\n\t                    "params":[\n\t                        "xx1",\n\t                        "xx2"\n\t                    ]\n\t                },\n\t                {\n\t                    "type":"user",\n\t                    "expression":"user.$signup_time",\n\t                    "function":"RELATIVE_TIME_OF_CUURENT",\n\t                    "params":[\n\t                        "30",\n\t                        "day",\n\t                        "within"\n\t                    ]\n\t                }\n\t            ],\n\t            "relation":"AND"\n\t        },\n\t        {\n\t            "rules":[\n\t                {\n\t                    "type":"event",\n\t                    "expression":"event.$startup",\n\t                    "eventAbsoluteTimeParams":[\n\t                        "2019-09-09",\n\t                        "2019-09-15"\n\t                    ],\n\t                    "aggregator":"TOTAL_COUNT",\n\t                    "function":"GTE",\n\t                    "params":[\n\t                        0\n\t                    ]\n\t                }\n\t            ],\n\t            "relation":"AND"\n\t        }\n\t    ],\n\t    "relations":[\n\t        "AND"\n\t    ]\n\t}\n}\' http://127.0.0.1:4005/uba/api/cohort',
    'get': 'curl -H "token:1b554f363d56238bf33a201620f2e9a9" -H "appKey:31abd9593e9983ec" http://127.0.0.1:4005/uba/api/cohort/2?needMore=false',
    'list': 'curl -H "token:1b554f363d56238bf33a201620f2e9a9" -H "appKey:31abd9593e9983ec" http://127.0.0.1:4005/uba/api/cohort?needMore=true&status=success',
    'recalculate': 'curl -H "token:1b554f363d56238bf33a201620f2e9a9" -H "appKey:31abd9593e9983ec" -X POST http://127.0.0.1:4005/uba/api/cohort/2/recalculate',
    'delete': 'curl -H "token:1b554f363d56238bf33a201620f2e9a9" -H "appKey:31abd9593e9983ec" -X DELETE http://127.0.0.1:4005/uba/api/cohort/2',
}

_CREATE = shlex.split(SEED_CURLS["create"])
SEED_BODY = json.loads(_CREATE[_CREATE.index("--data") + 1])
