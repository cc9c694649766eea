"""The API baseline: a bare Flask app with one JSON route, served by the same gunicorn config.

``gunicorn -c gunicorn.conf.py 'bench.bare_flask:create_app()'``. ``/ping`` answers GET
(a small JSON object) and POST (echoes the JSON body); ``/health`` exists so the harness
can wait for it like for Plant's API.
"""

from __future__ import annotations

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.route("/ping", methods=["GET", "POST"])
    def ping():  # noqa: ANN202
        if request.method == "POST":
            return jsonify({"ok": True, "echo": request.get_json(silent=True)}), 202
        return jsonify({"ok": True, "status": "succeeded"})

    @app.get("/health")
    def health():  # noqa: ANN202
        return jsonify({"status": "ok"})

    return app
