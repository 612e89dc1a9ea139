from sqlalchemy import Column, DateTime, ForeignKey, Integer, String, func
from sqlalchemy.orm import declarative_base, relationship

DeclarativeBase = declarative_base(name='DeclarativeBase')


class Order(DeclarativeBase):
    __tablename__ = 'orders'

    id = Column(Integer, primary_key=True)
    customer = Column(String(100), nullable=False)
    created_at = Column(DateTime, nullable=False, server_default=func.now())
    lines = relationship('OrderLine', back_populates='order',
                         cascade='all, delete-orphan', order_by='OrderLine.id')

    def to_dict(self):
        return {
            'id': self.id,
            'customer': self.customer,
            'lines': [line.to_dict() for line in self.lines],
        }


class OrderLine(DeclarativeBase):
    __tablename__ = 'order_lines'

    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey('orders.id'), nullable=False)
    sku = Column(String(64), nullable=False)
    quantity = Column(Integer, nullable=False)
    order = relationship('Order', back_populates='lines')

    def to_dict(self):
        return {'sku': self.sku, 'quantity': self.quantity}
