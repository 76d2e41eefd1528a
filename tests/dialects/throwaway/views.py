"""One endpoint: POST /throwaway/cohorts {name, tree} creates a cohort of the canonical tree through the service."""

from flask import Blueprint, jsonify, request

from app.auth import TokenPolicy, require_project
from app.services import cohort_service
from cohort_engine.definition import parse_definition

bp = Blueprint("throwaway", __name__, url_prefix="/throwaway")


@bp.post("/cohorts")
@require_project(policy=TokenPolicy(query_token=True))
def create():
    body = request.get_json(force=True)
    parse_definition(body["tree"])  # a bad tree: DefinitionError, answered 400 by the app
    service = cohort_service()
    cohort = service.create(body["name"], body["tree"], dialect="throwaway", request_body=body)
    job, created = service.submit(cohort, "create")
    service.commit_and_enqueue([(job, created)])
    return jsonify({"cohort": cohort["id"], "job": job["id"]}), 202
