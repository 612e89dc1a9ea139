"""A service keeping notes in a database through ``threadko.sqlalchemy``
(nameko-sqlalchemy's API): run it with a ``DB_URIS`` entry for
``notes:NotesBase``.

    threadko run examples.sqlalchemy_notes --config config.yaml

with, in ``config.yaml``::

    DB_URIS:
      "notes:NotesBase": "sqlite:////tmp/notes.db"
"""

import operator

from sqlalchemy import Column, Integer, String
from sqlalchemy.orm import declarative_base

from threadko.rpc import rpc
from threadko.sqlalchemy import Database, transaction_retry

NotesBase = declarative_base(name='NotesBase')


class Note(NotesBase):
    __tablename__ = 'notes'

    id = Column(Integer, primary_key=True)
    text = Column(String(200), nullable=False)


class NotesService:
    name = 'notes'

    db = Database(NotesBase)

    @rpc
    def add(self, text):
        # a session of its own: committed at the end of the block, or
        # rolled back if it raises
        with self.db.get_session() as session:
            note = Note(text=text)
            session.add(note)
            session.flush()
            return note.id

    @rpc
    @transaction_retry(session=operator.attrgetter('db.session'))
    def count(self):
        # the worker's session: opened on first use, closed (and rolled
        # back, as nothing is committed) when the worker ends; a dropped
        # connection is retried once
        return self.db.session.query(Note).count()
