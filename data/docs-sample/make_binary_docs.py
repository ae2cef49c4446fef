"""Re-create the PDF and DOCX documents of this sample folder from public-domain text.

Run once when the sample is created or changed (the outputs are committed, so tests need neither
library):  pip install fpdf2==2.8.* python-docx==1.*  &&  python data/docs-sample/make_binary_docs.py
See SOURCES.md for where each text comes from.
"""

import datetime
from pathlib import Path

HERE = Path(__file__).parent

SECOND_INAUGURAL = [
    ("h", "Second Inaugural Address of Abraham Lincoln"),
    ("p", "Delivered in Washington, D.C., on March 4, 1865, about a month before the end of the Civil War."),
    ("p", "Fellow-Countrymen: At this second appearing to take the oath of the Presidential office there is less "
          "occasion for an extended address than there was at the first."),
    ("p", "With malice toward none, with charity for all, with firmness in the right as God gives us to see the right, "
          "let us strive on to finish the work we are in, to bind up the nation's wounds, to care for him who shall have "
          "borne the battle and for his widow and his orphan, to do all which may achieve and cherish a just and lasting "
          "peace among ourselves and with all nations."),
]

ARTICLE_II = [
    ("h", "Article II, Section 1 of the Constitution of the United States"),
    ("p", "The executive Power shall be vested in a President of the United States of America. He shall hold his Office "
          "during the Term of four Years, and, together with the Vice President, chosen for the same Term, be elected, as follows:"),
    ("p", "No Person except a natural born Citizen, or a Citizen of the United States, at the time of the Adoption of this "
          "Constitution, shall be eligible to the Office of President; neither shall any Person be eligible to that Office who "
          "shall not have attained to the Age of thirty five Years, and been fourteen Years a Resident within the United States."),
    ("p", "Before he enter on the Execution of his Office, he shall take the following Oath or Affirmation: \"I do solemnly "
          "swear (or affirm) that I will faithfully execute the Office of President of the United States, and will to the best "
          "of my Ability, preserve, protect and defend the Constitution of the United States.\""),
]


def make_pdf(path: Path, blocks) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))  # fixed: same text, same bytes
    pdf.set_title(blocks[0][1])
    pdf.add_page()
    for kind, text in blocks:
        pdf.set_font("Helvetica", "B" if kind == "h" else "", 14 if kind == "h" else 11)
        pdf.multi_cell(0, 7 if kind == "h" else 6, text)
        pdf.ln(4)
    pdf.output(str(path))


def make_docx(path: Path, blocks) -> None:
    import docx

    d = docx.Document()
    d.core_properties.title = blocks[0][1]
    for kind, text in blocks:
        (d.add_heading(text, level=1) if kind == "h" else d.add_paragraph(text))
    d.save(str(path))


if __name__ == "__main__":
    make_pdf(HERE / "documents" / "speeches" / "second-inaugural.pdf", SECOND_INAUGURAL)
    make_docx(HERE / "documents" / "founding" / "article-ii.docx", ARTICLE_II)
    print("wrote", HERE / "documents" / "speeches" / "second-inaugural.pdf", HERE / "documents" / "founding" / "article-ii.docx")
