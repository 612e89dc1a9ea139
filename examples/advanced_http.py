"""What an ``@http`` method can return, and one method for several verbs.

Run it with ``threadko run examples.advanced_http``, then::

    curl -i -X POST -d "a pear" http://localhost:8000/notes
    curl -i http://localhost:8000/notes.csv
    curl -i -X DELETE http://localhost:8000/anything
"""

from werkzeug.wrappers import Response

from threadko.web.handlers import http


class AdvancedHttpService:
    name = "advanced_http_service"

    @http("POST", "/notes")
    def create_note(self, request):
        note = request.get_data(as_text=True)
        if not note:
            # (status, body)
            return 400, "a note needs some text\n"
        # (status, headers, body)
        return 201, {"Location": "/notes/1"}, "saved: {}\n".format(note)

    @http("GET", "/notes.csv")
    def export_notes(self, request):
        # a werkzeug Response is sent as it is
        return Response(
            "id,text\n1,a pear\n",
            mimetype="text/csv",
            headers={"Content-Disposition": "attachment; filename=notes.csv"},
        )

    @http("GET,PUT,POST,DELETE", "/anything")
    def any_method(self, request):
        return "{} handled by one method\n".format(request.method)
